"""mlq.scheduler"""
