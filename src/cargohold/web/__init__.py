"""HTTP entry points: thin handlers over the services."""
