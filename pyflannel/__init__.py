"""pyflannel: a pure-Python, flanneld-compatible VXLAN overlay daemon."""

__version__ = "0.1.0"
