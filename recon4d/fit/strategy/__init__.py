"""Densification strategies of the Gaussian fit: ops over parameter/optimizer dicts and policies built on them."""
