"""Typed request bodies: each JSON body is parsed once, at the route's boundary."""
