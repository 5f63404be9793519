"""Tables and plots rendered from MLflow, next to the published numbers."""
