"""The daemon (``mlq server``): the imperative shell around the store, the API,
the scheduling loop and the executor's supervision."""
