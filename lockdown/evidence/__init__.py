"""Evidence bundles: the manifest, export and verify (files are hashed while written by ``record.store``)."""
