"""The only aiohttp layer: middlewares, handlers, problem+json rendering, OpenAPI."""
