"""The optional history server where parents read conversations."""
