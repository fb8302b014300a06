"""TuckerScope: live previews of post-training Tucker compression of TotalSegmentator.

The distribution maps the repository's top-level folders core/, app/ and resources/ into this package
(tuckerscope.core, tuckerscope.app, tuckerscope.resources), so nothing bare lands in site-packages.
"""

__version__ = "0.1.0"
