"""Training: the shared VGG16 + three-sigmoid model (face2hbe.training)."""
