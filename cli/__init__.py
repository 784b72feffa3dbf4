"""mlq.cli"""
