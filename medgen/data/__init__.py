# Image I/O (reader/writer/check-data): one reader for DICOM, NIfTI and PNG; see medgen.data.reader.
from medgen.data.reader import ImageInfo, ImageReadError, find_images, inspect_image, read_image, read_image_and_info
from medgen.data.writer import write_image
from medgen.data.check import FileReport, format_report, scan_files, write_report_json
