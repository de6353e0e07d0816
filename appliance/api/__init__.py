"""HTTP layer: Litestar controllers that validate input, call a service, and return its result.

Only this package imports litestar. Handlers stay one to three lines; the errors the services raise
become HTTP responses in appliance.api.errors alone.
"""
