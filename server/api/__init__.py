"""The API process: routes, request and response models, rendering, errors, metrics, the playground."""
