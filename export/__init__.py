"""face2hbe.export"""
