"""mlq.executor"""
