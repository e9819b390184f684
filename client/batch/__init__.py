"""face2hbe.client.batch: the batch job on Ray Data (needs the [batch] extra).

job.py runs it (BatchSettings, run_batch); inputs.py reads what it is given, stages.py holds the Ray Data stages
and store.py the Parquet output (schema, atomic parts, exactly-once reconciliation).
"""

from .job import BatchSettings, BatchSummary, run_batch  # noqa: F401
from .store import read_output, record_from_row  # noqa: F401
