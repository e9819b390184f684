"""face2hbe.serving"""
