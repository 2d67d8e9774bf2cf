"""Your own data through Ray Data: image folders, NumPy files and Parquet tables, on local disk
or S3 — found and checked before any worker starts (`check`), read into items (`read`), and
turned into what a training run consumes (`prepare`): tensors in memory for small data, a Ray
Data stream that each worker shards for large data.
"""
