"""The stats repair benchmark: generate a toutiao database at scale, run the old job and ours."""
