"""`make bench`: s3mount side by side with s3fs-fuse, rclone mount and the raw boto3 client."""
