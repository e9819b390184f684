"""face2hbe.loadtest"""
