"""Blob bytes: a small driver interface, the key layout, and the drivers."""
