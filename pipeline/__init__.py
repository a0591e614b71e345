"""The stages of albat, its methods and surrogates (installed as `albat.pipeline`)."""
