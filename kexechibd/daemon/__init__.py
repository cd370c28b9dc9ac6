"""The daemon: the Manager (core), its D-Bus shell, authorization, and the
process around them (``main``)."""
