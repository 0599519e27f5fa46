"""Everything catalens persists in SQL besides vectors: the collection-state seam and its sqlite
implementation, the query log and the download cache index. Imports only ``types``/``errors``."""
