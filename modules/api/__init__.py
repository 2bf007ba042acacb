"""The A1111-compatible HTTP API (``/sdapi/v1``): request/response models, routes and the security middleware.

``webui.server.create_app`` includes ``routes.build_router(state)`` and calls ``security.install_security(app, state)``.
"""
