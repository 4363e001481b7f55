"""The loss catalog as data: one TOML file per survey section (see autoloss.catalog).

This folder ships inside the wheel as the ``autoloss.primitives`` package.
"""
