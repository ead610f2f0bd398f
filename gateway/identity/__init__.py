"""Identity: token verification now; the OpenID Connect provider and federation later."""
