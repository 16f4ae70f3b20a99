"""Fakes and throwaway servers shared by the tests and bench/."""
