"""The frozen bundle's entry point: the installed `tuckerscope` command, plus what a frozen process needs.

freeze_support() must run first: the window's surface worker is a spawn-mode multiprocessing process, and in
a PyInstaller bundle that child is this same executable started with multiprocessing's own arguments.
"""

import multiprocessing
import sys

from tuckerscope.launcher import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
