"""Limits that training and the HTTP layer both enforce, so `/finetune` refuses what
`boxgen finetune` would refuse."""

MIN_PHOTOS = 5  # a fine-tune's fewest photos: below this the critic memorises the set
MAX_PHOTOS = 100  # its most: beyond this it is a pretraining corpus, not a few-shot fine-tune
