"""Benchmarks that measure the product from outside its runtime packages."""
