"""Selection methods, one small module each, behind `pipeline.methods.base.get_method`."""
