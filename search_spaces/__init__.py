"""Search-space definitions (TOML), shipped inside the wheel as ``autoloss.search_spaces``."""
