"""Consortium configuration: schema and mapping files (TOML) and their validating loaders."""
