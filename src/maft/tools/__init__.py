"""Command-line tools installed as console scripts (``maft-prepare-*``, ``maft-aggregate``, ...).

``scripts/<name>.py`` in a checkout runs the same code.
"""
