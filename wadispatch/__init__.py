"""wadispatch's client side: what an upstream service imports to hand messages over."""

# The release (CHANGELOG.md); pyproject.toml reads it from here.
__version__ = "0.3.0.dev0"
