import torch

from seglab.book import explorer


def test_grid_labels_samples_cell_centres_and_marks_the_padding_void():
    mask = torch.zeros(7, 10, dtype=torch.long)  # a 7 x 10 image on a 12-px canvas, cells of 4 px: 3 x 3 grid
    mask[2, 6] = 7  # the centre of cell (0, 1)
    labels = explorer.grid_labels(mask, grid=3, cell=4)
    assert labels.tolist() == [[0, 7, 255], [0, 0, 255], [255, 255, 255]]


def test_pick_queries_takes_the_largest_class_near_its_centroid_and_the_farthest_background():
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[0:3, 0:3] = 12  # the largest object class, 9 cells, centroid (1, 1)
    labels[5, 4:6] = 3  # a smaller object
    labels[0, 5] = 255
    assert explorer.pick_queries(labels) == [(12, (1, 1)), (0, (4, 5))]  # (5, 5), (5, 4): not background


def test_pick_queries_without_background_or_without_object():
    assert explorer.pick_queries(torch.full((3, 3), 5)) == [(5, (1, 1))]
    no_object = torch.zeros(3, 3, dtype=torch.long)
    no_object[:, 2] = 255
    assert explorer.pick_queries(no_object) == [(0, (1, 0))]  # nearest the centroid (1, 0.5) of the valid cells
    assert explorer.pick_queries(torch.full((2, 2), 255)) == []


def test_pick_queries_breaks_a_size_tie_by_the_lower_class_id():
    labels = torch.tensor([[9, 9, 0], [4, 4, 0]])
    assert explorer.pick_queries(labels)[0][0] == 4


def test_query_pixel_flat_index_and_view_label():
    assert explorer.query_pixel((2, 3), cell=16) == (40, 56)
    assert explorer.flat_index((2, 3), grid=16) == 35

    class Split:
        ids = ["2007_000032", "2007_000799"]

    assert explorer.view_label(Split(), 1, 13) == "2007_000799: query on horse"
    assert explorer.view_label(Split(), 0, "background") == "2007_000032: query on background"
