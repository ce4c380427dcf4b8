"""Evidence: files hashed while written, a manifest, export and verify."""
