"""Loss terms: divergences (dense + sparse), CE, feature branch, decoupled objectives, normalization."""
