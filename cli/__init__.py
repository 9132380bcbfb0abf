"""The `wadispatch` command."""
