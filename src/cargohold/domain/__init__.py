"""Pure rules and values of the registry: standard library only, no I/O."""
