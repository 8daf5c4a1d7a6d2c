"""HTTP routes, one module per concern; each calls services and never the other way round."""
