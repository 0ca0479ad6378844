"""Shared test helpers: tiny configs, feature stores, tiny models, a private Ray head.

Test modules import from here, never from each other.
"""
