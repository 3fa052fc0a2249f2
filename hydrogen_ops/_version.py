# The one place the version is set: setup.py reads it and appends the local tag of the
# torch a build is made for (0.1.0+pt214cu130).
__version__ = "0.1.0"
