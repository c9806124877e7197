"""The portal (政务数据共享门户): the node's face for people, one more face on the same services as the API."""
