"""Files shipped with the app: the demo models and small tables."""

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent
DEMO_MODELS_DIR = RESOURCES_DIR / "demo_models"
