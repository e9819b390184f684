"""face2hbe: faces in photos -> eyewear / beard / hat -> product recommendations.

Subpackages are light to import; heavy libraries load inside the functions that need them.
"""

__version__ = "0.1.0"
