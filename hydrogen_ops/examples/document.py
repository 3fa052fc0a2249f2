"""A long document and questions about it, for the examples: many questions, one shared prompt.

The document is a made-up guide to a fictional island, written for this project (same licence
as the project); every place, person and figure in it is invented. Its facts are spelled out
so that questions about them have short, checkable answers.
"""

from __future__ import annotations

TITLE = "A Visitor's Guide to Kestrel Reach"

DOCUMENT = """\
A Visitor's Guide to Kestrel Reach

Kestrel Reach is a small island in the cold grey waters of the Saltmere Sound. It is six kilometres long from north to south and about two kilometres wide at its widest point, which is the middle of the island, near the village of Hollin. The island has one village, one lighthouse, one school, one harbour and, according to the islanders, far more sheep than anyone has ever managed to count. Four hundred and twelve people live on Kestrel Reach all year round. In summer the number grows to about nine hundred, because many families from the mainland rent the old stone cottages along the western shore.

Geography

The island is shaped like a long leaf. Its northern end is a line of tall dark cliffs called the Shearwater Cliffs, which rise straight out of the sea to a height of about ninety metres. The southern end is low and sandy, with a wide beach called Mallow Strand and a line of dunes covered in marram grass. Between the two ends lies a gentle ridge of green hills. The highest point of the island is Cairn Hill, which is two hundred and fourteen metres high. A pile of stones, the cairn that gives the hill its name, stands on the summit, and from there a walker can see the whole island and, on a clear day, the mountains of the mainland to the east.

There are no rivers on Kestrel Reach, only small streams that run down from the hills after rain. Fresh water comes from a deep well in the village and from a reservoir in the hills called Tarn Ellis, which was dug by hand in 1908. The soil is thin and stony, and trees grow only in the sheltered valley behind the village, where an old orchard of apple and pear trees still gives fruit every autumn.

History

People have lived on the island for a very long time. Stone tools found near Mallow Strand show that hunters visited the island thousands of years ago to catch seals and seabirds. The village of Hollin was founded in 1732 by eleven fishing families who sailed across from the mainland port of Alder. They chose the island because the waters around it were full of mackerel and herring, and because the bay on the eastern side, now called Hollin Bay, gave their boats a safe place to shelter from the western storms.

Life was hard in the early years. The first winter was so cold that the settlers burned two of their boats for firewood, and for many years afterwards the village kept a rule that no boat could be burned, whatever the weather. In 1794 a great storm destroyed half of the houses in Hollin, and the villagers rebuilt them with thick stone walls and low roofs, which is why the village looks the way it does today.

The island changed in the nineteenth century, when ships began to carry coal and timber through the Saltmere Sound. The rocks off the northern cliffs, known as the Teeth, wrecked so many ships that the government decided to build a lighthouse. After the lighthouse was built, the number of wrecks fell from about six a year to almost none.

The Lighthouse

The Kestrel Reach Lighthouse stands on the northern tip of the island, at the top of the Shearwater Cliffs. It was designed by the engineer Margaret Olsen and finished in 1851. The tower is thirty-eight metres tall and is painted with red and white bands, four red and four white. Its light flashes white twice every fifteen seconds and can be seen from twenty-two nautical miles away. The first keeper of the lighthouse was a man named Elias Penhale, who kept the light burning for thirty-one years and wrote a diary of every ship he saw pass. His diary is now kept in the island museum.

Until 1974 three keepers lived at the lighthouse with their families. In that year the light was made automatic, and the keepers' cottages were turned into a small museum and a cafe. Visitors can climb the one hundred and sixty-two steps to the lantern room on Tuesdays, Thursdays and Saturdays between May and September. The view from the top is the best on the island.

The Village of Hollin

Hollin sits on the eastern shore, around the curve of Hollin Bay. Its single main street, called Quay Street, runs along the harbour wall. On Quay Street there is a general store, a post office, a bakery, a pub called The Anchor and a chapel with a small bell tower. The chapel bell was cast in 1801 and is rung every evening at six o'clock, a custom that began as a signal for the fishing boats to come home.

The island school stands at the top of the village, next to the playing field. It has two classrooms and thirty-seven pupils between the ages of four and eleven. Older children take the ferry to the mainland every Monday morning and stay in Port Alder during the week, coming home on Friday afternoons. The school's head teacher is Mrs Ada Whitlock, who has taught on the island for twenty-six years.

The island has a doctor's surgery, which is open on Mondays, Wednesdays and Fridays, and a small fire station with one fire engine and a crew of volunteers. In an emergency, a helicopter can reach the island from the mainland in about twenty minutes.

The Harbour and the Ferry

The harbour of Hollin is protected by a long stone breakwater that was finished in 1889. The harbour master is Tomas Reyes, who also runs the lifeboat station. The island's lifeboat, called the Brave Margaret after the engineer who built the lighthouse, is crewed by twelve volunteers and has saved more than two hundred lives since the station opened in 1893.

The only way to reach Kestrel Reach is by boat. The ferry, named the Morning Gull, sails from Port Alder on the mainland every day at eight o'clock in the morning and at two o'clock in the afternoon. The crossing takes ninety minutes in calm weather. A return ticket costs eighteen pounds for an adult and nine pounds for a child, and bicycles travel free. Cars are not allowed on the island, except for the doctor's car, the fire engine and two small tractors used by the farmers. In winter the ferry sails only once a day, at ten o'clock in the morning, and when the wind is stronger than force eight it does not sail at all.

Work and Trade

For most of its history the island lived from fishing. Today only six fishing boats still work from Hollin harbour, and most of them catch crab and lobster rather than mackerel. The island's most famous product is smoked mackerel, which is prepared in an old smokehouse on Quay Street using oak chips and a recipe that has not changed since 1860. The smokehouse sends boxes of fish to shops all over the country.

Sheep farming is the second industry of the island. About two thousand sheep graze on the hills, most of them of a small, hardy breed with brown wool called the Reach Brown. Their wool is spun and dyed on the island and made into jumpers, hats and blankets, which are sold in the general store and by post. The island also has a small weaving workshop, run by the Kettering sisters, where visitors can watch cloth being made on old wooden looms.

Tourism has become more important in the last fifty years. Visitors come for the walking, the birds, the beaches and the quiet. There are two guest houses in Hollin, a campsite behind Mallow Strand, and the old cottages on the western shore, which can be rented by the week.

Wildlife

Kestrel Reach is famous for its seabirds. The Shearwater Cliffs hold a colony of about three thousand pairs of puffins, which arrive in April and leave in early August. Guillemots, razorbills, kittiwakes and fulmars also nest on the cliffs. The island takes its name from the kestrels that hunt over the hills, hovering in the wind before they drop onto mice and beetles in the grass.

Grey seals live on the rocks at the southern end of the island, and in autumn they have their pups on Mallow Strand, which is closed to visitors from October to December so that the seals are not disturbed. Dolphins are often seen in the Saltmere Sound in summer, and in some years a small group of orcas passes the island in June. The bird observatory at the southern end of the island counts the birds every morning and keeps records going back to 1951.

Festivals

The most important event of the island year is the Lantern Festival, held on the second Saturday of September. On the evening of the festival, every family carries a paper lantern down to the harbour, and the lanterns are set afloat on the water of Hollin Bay in memory of the fishermen who were lost at sea. Afterwards there is music and dancing in The Anchor until late at night.

In July the island holds the Sheep Show, where farmers compete for the prize of the best Reach Brown ram, and there is a race up Cairn Hill which is open to anyone. The record for the race, twenty-one minutes and forty seconds from the harbour to the cairn and back, was set in 1987 by a fisherman named Rory Dunmore, and nobody has beaten it since.

Weather

The weather on Kestrel Reach changes quickly. Summers are cool, with an average temperature of sixteen degrees in July, and winters are mild but very windy. Snow is rare, but gales are common between November and March. The wettest month is October and the driest is May. Visitors should always bring a warm coat and waterproof boots, even in summer, and should check the ferry times before travelling, because the Morning Gull does not sail in stormy weather.

Walking on the Island

A footpath called the Reach Way goes all the way round the island. It is sixteen kilometres long and takes about five hours to walk. The path passes the lighthouse, the puffin colony, Mallow Strand and the orchard behind the village. Walkers should keep well away from the edge of the Shearwater Cliffs, which can crumble, and should keep dogs on a lead near the sheep. Maps of the path can be bought at the post office for two pounds.

Rules for Visitors

The islanders are friendly and welcome visitors, but they ask everyone to follow a few simple rules. Take your rubbish home with you on the ferry. Do not pick the wild flowers or take eggs from the nests. Close every gate behind you. Do not light fires on the beaches. And if you hear the chapel bell ringing at any time other than six o'clock in the evening, go to the harbour, because an extra bell means that the lifeboat crew is needed.
"""

QUESTIONS = [
    "Who designed the lighthouse?",
    "In which year was the lighthouse finished?",
    "How tall is the lighthouse tower?",
    "How often does the lighthouse flash?",
    "What is the highest point of the island?",
    "How high is Cairn Hill?",
    "What is the name of the ferry?",
    "At what times does the ferry sail in summer?",
    "How long does the ferry crossing take?",
    "How much does an adult return ticket cost?",
    "Who is the harbour master?",
    "What is the lifeboat called?",
    "When was the village of Hollin founded?",
    "Who was the first lighthouse keeper?",
    "What is the island's most famous product?",
    "What breed of sheep lives on the island?",
    "How many pupils does the school have?",
    "Who is the head teacher of the school?",
    "When is the Lantern Festival held?",
    "How many pairs of puffins nest on the cliffs?",
    "When do the puffins arrive?",
    "Why is Mallow Strand closed from October to December?",
    "What is the wettest month on the island?",
    "How long is the Reach Way footpath?",
    "What does an extra ringing of the chapel bell mean?",
    "Are cars allowed on the island?",
    "How many steps lead to the lantern room?",
    "Where does the island's fresh water come from?",
    "What happened in the great storm of 1794?",
    "Who holds the record for the race up Cairn Hill?",
    "What is the average temperature in July?",
    "How many people live on Kestrel Reach all year round?",
]
