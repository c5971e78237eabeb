"""The house-price inference service: model loading, validation, fast prediction, HTTP app."""
