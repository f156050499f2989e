"""The wire to Bitrix24: REST calls and `batch`, the query-string encoding, the OAuth refresh. No Redis."""
