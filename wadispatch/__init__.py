"""wadispatch's client side: what an upstream service imports to hand messages over."""
