"""Methods defined outside the package, registered for the tests through ``DICMOR_PLUGINS``."""
